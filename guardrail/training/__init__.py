"""Training data and head training for the guardrail classifier."""
