"""The web application: assembly of the slices' routers, the UI's templates and static files."""
