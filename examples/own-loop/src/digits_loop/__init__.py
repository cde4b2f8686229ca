"""An own training loop over Conveyor's prepared digits (examples/own-loop)."""
