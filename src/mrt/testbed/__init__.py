"""The reasoning testbed: a multi-step reasoning-gym task (`reasoning_gym`) and written traces that reason in
episodes (`traces`), for a warm start that gives a small model the long-CoT shape MRT is built for."""
