"""One module per `conveyor` subcommand: `register(subparsers)` adds its parser and sets `handler`."""
