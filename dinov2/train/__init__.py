"""Training: the SSL meta-architecture, the loop and its evaluation (see ARCHITECTURE.md).

The package imports nothing on its own, so that the entry point's options load without torch.
"""
