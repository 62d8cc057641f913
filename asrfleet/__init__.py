"""Shared code of the speech-recognition fleet: audio, engines, fleet control, batch client."""
