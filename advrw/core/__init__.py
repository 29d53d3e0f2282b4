"""The base every other package may import and that imports none of them: the error types and exit
codes, the run keys and override parser, checkpoint and JSON files, and the machine (device, seed,
precision/channels_last capability)."""
