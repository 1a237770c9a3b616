"""Retention, legal holds and erasure on request: "kept for three months, deleted on request unless
needed to defend a legal claim" (GDPR Art. 5(1)(e), 17(1), 17(3)(e))."""
