"""Terminal output shared by the command line and the actions: plurals, colour, progress."""
