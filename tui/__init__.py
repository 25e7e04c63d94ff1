"""`partenza top`: the Textual app that watches and steers a live system."""
