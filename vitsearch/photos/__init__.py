"""Photos on disk: finding and fingerprinting files, decoding them (EXIF, drafts, modes),
perceptual hashes, labelled folders (``DIR/<label>/…``) and thumbnails."""
