fn main() {
    std::process::exit(netfence::cli::main());
}
