"""Voice commands: trigger -> capture -> VAD -> speech -> intent -> action."""
