"""The Docker port: engine connection, helper containers, volumes, leftovers."""
