"""Photos on disk, the bottom layer every other package may use: finding and fingerprinting
files, decoding them (EXIF, drafts, modes), perceptual hashes, labelled folders
(``DIR/<label>/…``), and writing files atomically."""
