"""Building blocks several methods share (not methods: the registry does not look here): cohorts of peer networks,
branched networks and their multi-branch groups, self-distillation heads and stage adapters, ramp-ups, KDCL's
ensemble targets."""
