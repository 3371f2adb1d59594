"""The data: Kaldi tables, data dirs and trial lists (read and checked without torch), audio, on-the-fly
features, augmentation, the front end that turns audio crops into training features, the loaders' datasets,
and the splits an experiment's data config names."""
