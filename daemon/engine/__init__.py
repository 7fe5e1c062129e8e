"""Everything that talks to the Docker engine: the connection, helper containers and their
stream, volumes, stopping and starting containers (with the crash-safe stop journal), hooks,
and the removal of what a dead volkeep left behind."""
