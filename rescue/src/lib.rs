//! defib's rescue: the library behind the `rescue` binary.
