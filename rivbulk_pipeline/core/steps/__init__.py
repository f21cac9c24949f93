"""The load's steps: qualify the day's candidates, index the qualified ones, summarise the
history; and what they share (stored tables, the previous date's outcomes, progress)."""
