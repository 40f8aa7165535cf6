/// mimalloc instead of glibc's malloc: loading manifests allocates millions
/// of small strings and maps on every core at once, and glibc's allocator
/// took a quarter of that CPU time (about 15% less CPU to load 100k pods;
/// docs/benchmarks.md). Only the binary: tests keep the system allocator
/// (the fuzz tests count allocations with their own).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(netfence::cli::main());
}
