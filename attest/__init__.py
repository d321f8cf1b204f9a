"""Measurement sources (TDX, SNP, vTPM, attestation-agent) that bind initdata to the TEE."""
