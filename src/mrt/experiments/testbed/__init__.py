"""The reasoning testbed: written traces that reason in episodes (traces), the SFT warm start and the pilot gates."""
