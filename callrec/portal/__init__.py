"""The staff portal: limited, audited access to recordings for support, supervisors, privacy,
legal, auditors and admins of one tenant each."""
