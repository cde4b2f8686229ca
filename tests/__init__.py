"""Conveyor's tests, a package so helpers are imported by one unambiguous name (`tests.helpers...`)."""
