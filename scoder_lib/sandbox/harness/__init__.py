"""Child-side code of the sandbox: it runs inside the sandbox, next to untrusted programs.

Standard library only (numpy is imported lazily for float tolerance), and never imports the rest
of `scoder_lib`: the parent side lives in `scoder_lib.execution`.
"""
