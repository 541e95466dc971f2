"""FHIR R4 output for the EHR: a report version as a DiagnosticReport (see diagnostic_report.py)."""
