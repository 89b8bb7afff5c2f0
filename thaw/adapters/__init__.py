"""Engine adapters. Each subpackage imports its engine; thaw.core never does."""
