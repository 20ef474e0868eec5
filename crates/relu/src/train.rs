//! Classifier training for ReLU MLPs (cross-entropy, Adam or SGD).
//! (Being written.)
