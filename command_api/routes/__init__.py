"""HTTP routes of the command API, one router per resource."""
