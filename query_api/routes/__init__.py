"""The query API's routers, one per resource."""
