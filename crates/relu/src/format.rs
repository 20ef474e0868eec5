//! Model files: safetensors (canonical + PyTorch `nn.Sequential` names) and `.npz` import.
//! (Being written.)
