"""The HTTP app: routes, how the server runs, configuration, auth at the door, capacity and drain, the jam page."""
