"""The usage meter (issue #18): a late consumer that joins prompts to their finals."""
