"""The machine we run on, the bottom layer every other package may use: files written whole
or not at all and locks on files (``fileio``), how busy the other processes keep the CPU
(``busy``) and the thread count that makes room for them (``cpu``), and what the CPU has
(``hardware``: its name, bf16 flags, the precision that follows). Nothing here imports torch."""
