"""The rescue shell: find out what failed, mend it, resume the boot.

A prompt-toolkit app and a client of the control socket. `rescue.shell.run` is
its entry point (`partenza rescue [--bluescreen MODULE]`); `rescue.report`
draws the bluescreen, `rescue.auth` asks for root's password, `rescue.watch`
follows the system's state for the prompt, and `rescue.terminal` hands the
terminal to editors and shells.
"""
