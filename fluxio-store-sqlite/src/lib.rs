//! SQLite checkpoint store for fluxio (work in progress).
