"""Optional concerns of a run, one file each, registered in `registry.PLUGINS` (docs: engine/plugin.py)."""
