"""The report's one home: domain types, the lifecycle state machine, row mapping, deliveries.

Everything that decides what a report version may become, and which messages it sends, lives
here; the worker and the web call it, the SR and ORU builders take its domain objects.
"""
