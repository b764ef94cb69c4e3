"""The SMART App Launch client side: discovery, authorization, tokens and the FHIR HTTP client."""
