"""The edge of the world: sysfs, /proc and vcgencmd are read here and nowhere else."""
