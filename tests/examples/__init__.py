"""The examples/ projects, run as a user would run them."""
