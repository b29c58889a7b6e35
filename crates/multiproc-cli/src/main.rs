fn main() {
    multiproc::init();
}
