"""Consent, jurisdiction and the recording policy: pure rules, no I/O.

``jurisdiction`` places each party of a call from its E.164 number and says whether the call falls
under a one-party or an all-party consent law; ``policy`` decides, before anything is stored,
whether a recording is stored, quarantined, refused or waits for late consent events.
"""
