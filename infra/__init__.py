"""Shared plumbing: settings, client factories, the local launcher, the CLI, the test harness."""
