"""Stand-alone tokenizers (BPE via youtokentome, word-level with word2vec vectors); never imports TensorFlow or MLflow."""
