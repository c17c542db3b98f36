"""Offline Whisper transcription with lossless speculative decoding."""
