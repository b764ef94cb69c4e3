"""Pure mapping from FHIR R4 JSON to help-desk context. No I/O, no Flask, no globals."""
