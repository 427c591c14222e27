"""Input: find labelled images (`sources`), read them (`images`), feed batches (`pipeline`)."""
