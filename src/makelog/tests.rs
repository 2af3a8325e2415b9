use super::*;

fn at(file: Option<&str>, line: Option<u32>, column: Option<u32>, message: &str) -> FirstError {
    FirstError { file: file.map(str::to_string), line, column, message: message.to_string() }
}

/// bookworm: gcc 12, kernel 6.1, the build directory in absolute paths.
const GCC12_UNDECLARED: &str = "\
DKMS make.log for hello-1.0 for kernel 6.1.0-56-amd64 (x86_64)
Mon Jan  6 10:00:00 UTC 2025
make -j2 KERNELRELEASE=6.1.0-56-amd64 -C /lib/modules/6.1.0-56-amd64/build M=/var/lib/dkms/hello/1.0/build modules
make[1]: Entering directory '/usr/src/linux-headers-6.1.0-56-amd64'
  CC [M]  /var/lib/dkms/hello/1.0/build/hello.o
  CC [M]  /var/lib/dkms/hello/1.0/build/util.o
/var/lib/dkms/hello/1.0/build/util.c:4:13: warning: 'unused' defined but not used [-Wunused-function]
    4 | static void unused(void) {}
      |             ^~~~~~
/var/lib/dkms/hello/1.0/build/hello.c: In function 'hello_init':
/var/lib/dkms/hello/1.0/build/hello.c:12:5: error: 'x' undeclared (first use in this function)
   12 |     x = 1;
      |     ^
/var/lib/dkms/hello/1.0/build/hello.c:12:5: note: each undeclared identifier is reported only once for each function it appears in
/var/lib/dkms/hello/1.0/build/hello.c:14:1: error: control reaches end of non-void function [-Werror=return-type]
   14 | }
      | ^
cc1: some warnings being treated as errors
make[3]: *** [/usr/src/linux-headers-6.1.0-56-common/scripts/Makefile.build:255: /var/lib/dkms/hello/1.0/build/hello.o] Error 1
make[2]: *** [/usr/src/linux-headers-6.1.0-56-common/Makefile:2037: /var/lib/dkms/hello/1.0/build] Error 2
make[1]: *** [Makefile:250: __sub-make] Error 2
make[1]: Leaving directory '/usr/src/linux-headers-6.1.0-56-amd64'
";

/// trixie: gcc 14 makes an implicit declaration an error; UTF-8 quotes.
const GCC14_IMPLICIT: &str = "\
make -j4 KERNELRELEASE=6.12.38+deb13-amd64 -C /lib/modules/6.12.38+deb13-amd64/build M=/var/lib/dkms/v4l2loopback/0.12.7/build
make[1]: Entering directory '/usr/src/linux-headers-6.12.38+deb13-amd64'
  CC [M]  v4l2loopback.o
v4l2loopback.c: In function \u{2018}vidioc_querycap\u{2019}:
v4l2loopback.c:781:9: error: implicit declaration of function \u{2018}strlcpy\u{2019}; did you mean \u{2018}strscpy\u{2019}? [-Wimplicit-function-declaration]
  781 |         strlcpy(cap->driver, \"v4l2 loopback\", sizeof(cap->driver));
      |         ^~~~~~~
      |         strscpy
make[3]: *** [/usr/src/linux-headers-6.12.38+deb13-common/scripts/Makefile.build:234: v4l2loopback.o] Error 1
";

#[test]
fn gcc_12s_first_error_relative_to_the_build_directory() {
    assert_eq!(
        first_error(GCC12_UNDECLARED),
        Some(at(Some("hello.c"), Some(12), Some(5), "'x' undeclared (first use in this function)"))
    );
    let shown = first_error(GCC12_UNDECLARED).unwrap().to_string();
    assert_eq!(shown, "hello.c:12:5: 'x' undeclared (first use in this function)");
}

#[test]
fn gcc_14s_implicit_declaration_with_relative_paths() {
    let found = first_error(GCC14_IMPLICIT).unwrap();
    assert_eq!((found.file.as_deref(), found.line, found.column), (Some("v4l2loopback.c"), Some(781), Some(9)));
    assert!(found.message.starts_with("implicit declaration of function \u{2018}strlcpy\u{2019}"), "{found:?}");
}

#[test]
fn a_missing_header_is_a_fatal_error() {
    let log = "\
  CC [M]  /var/lib/dkms/foo/2.1/build/src/foo.o
/var/lib/dkms/foo/2.1/build/src/foo.c:3:10: fatal error: linux/foo.h: No such file or directory
    3 | #include <linux/foo.h>
      |          ^~~~~~~~~~~~~
compilation terminated.
make[3]: *** [scripts/Makefile.build:243: /var/lib/dkms/foo/2.1/build/src/foo.o] Error 1
";
    assert_eq!(
        first_error(log),
        Some(at(Some("src/foo.c"), Some(3), Some(10), "linux/foo.h: No such file or directory"))
    );
}

#[test]
fn an_error_in_a_kernel_header_keeps_its_path() {
    let log = "\
In file included from /var/lib/dkms/foo/2.1/build/foo.c:2:
/usr/src/linux-headers-6.1.0-56-common/include/linux/fs.h:40:3: error: unknown type name 'bar_t'
";
    let found = first_error(log).unwrap();
    assert_eq!(found.file.as_deref(), Some("/usr/src/linux-headers-6.1.0-56-common/include/linux/fs.h"));
    assert_eq!((found.line, found.column), (Some(40), Some(3)));
}

#[test]
fn modpost_names_the_module_and_the_symbol() {
    let log = "\
  MODPOST /var/lib/dkms/hello/1.0/build/Module.symvers
ERROR: modpost: \"undefined_fn\" [/var/lib/dkms/hello/1.0/build/hello.ko] undefined!
make[3]: *** [/usr/src/linux-headers-6.1.0-56-common/scripts/Makefile.modpost:126: /var/lib/dkms/hello/1.0/build/Module.symvers] Error 1
";
    assert_eq!(
        first_error(log),
        Some(at(Some("hello.ko"), None, None, "modpost: \"undefined_fn\" [hello.ko] undefined!"))
    );
}

#[test]
fn the_linkers_undefined_references_and_its_own_errors() {
    let log = "\
ld: /var/lib/dkms/hello/1.0/build/hello.o: in function `hello_init':
/var/lib/dkms/hello/1.0/build/hello.c:10: undefined reference to `missing'
";
    assert_eq!(first_error(log), Some(at(Some("hello.c"), Some(10), None, "undefined reference to `missing'")));
    let log = "x86_64-linux-gnu-ld: /var/lib/dkms/h/1/build/a.o:(.bss+0x0): multiple definition of `x'; /var/lib/dkms/h/1/build/b.o:(.bss+0x0): first defined here\n";
    assert_eq!(
        first_error(log),
        Some(at(Some("a.o"), None, None, "multiple definition of `x'; b.o:(.bss+0x0): first defined here"))
    );
    let log = "ld: warning: creating DT_TEXTREL\nld: cannot find -lfoo: No such file or directory\n";
    assert_eq!(first_error(log), Some(at(None, None, None, "cannot find -lfoo: No such file or directory")));
    assert_eq!(
        first_error("ld.lld: error: undefined symbol: bar\n"),
        Some(at(None, None, None, "undefined symbol: bar"))
    );
}

#[test]
fn a_programs_own_error_names_no_file() {
    let log = "x86_64-linux-gnu-gcc-12: error: unrecognized command-line option '-mno-fancy'\n";
    assert_eq!(first_error(log), Some(at(None, None, None, "unrecognized command-line option '-mno-fancy'")));
}

#[test]
fn a_makefiles_own_stop_is_located() {
    let log = "/var/lib/dkms/foo/1/build/Makefile:7: *** Kernel headers not found.  Stop.\nmake: *** [Makefile:3: all] Error 2\n";
    assert_eq!(first_error(log), Some(at(Some("Makefile"), Some(7), None, "Kernel headers not found.  Stop.")));
}

#[test]
fn makes_stop_stands_in_when_no_compiler_spoke() {
    let log = "\
make -C /lib/modules/6.1.0-56-amd64/build M=/var/lib/dkms/foo/1.0/build modules
make[1]: Entering directory '/usr/src/linux-headers-6.1.0-56-amd64'
make[2]: *** No rule to make target '/var/lib/dkms/foo/1.0/build/foo.o', needed by '/var/lib/dkms/foo/1.0/build/foo.ko'.  Stop.
make[1]: *** Waiting for unfinished jobs....
make[1]: *** [Makefile:2037: /var/lib/dkms/foo/1.0/build] Error 2
";
    assert_eq!(
        first_error(log),
        Some(at(None, None, None, "No rule to make target 'foo.o', needed by 'foo.ko'.  Stop."))
    );
    // Only make's echo of a failed recipe: nothing to quote.
    assert_eq!(first_error("make: *** [Makefile:4: all] Error 2\n"), None);
    assert_eq!(first_error("all good\n"), None);
}

#[test]
fn a_warning_that_quotes_error_is_not_an_error() {
    let log = "foo.c:1:2: warning: #warning \"error: not really\" [-Wcpp]\nfoo.c: In function 'f':\n";
    assert_eq!(first_error(log), None);
}

#[test]
fn escapes_are_dropped_and_long_messages_cut() {
    let log = format!("foo.c:1:1: error: \u{1b}[01;31mbad\u{1b}[m {}\n", "x".repeat(1000));
    let found = first_error(&log).unwrap();
    assert!(found.message.starts_with("bad xxx") && !found.message.contains('\u{1b}'), "{found:?}");
    assert!(found.message.chars().count() <= MESSAGE_MAX + 1, "{}", found.message.len());
}

#[test]
fn a_large_log_is_read_at_both_ends_only() {
    let noise = "  CC [M]  /var/lib/dkms/foo/1/build/a.o\n".repeat((3 * WINDOW as usize) / 40);
    // In the middle: never read.
    let log = format!("{noise}mid.c:1:1: error: unseen\n{noise}end.c:2:3: error: seen\n");
    let found = first_error_of(log.as_bytes()).unwrap();
    assert_eq!(found, at(Some("end.c"), Some(2), Some(3), "seen"));
    let text = excerpt(std::io::Cursor::new(log.as_bytes()), log.len() as u64).unwrap();
    assert!(text.len() as u64 <= 2 * WINDOW, "{}", text.len());
    assert!(text.lines().all(|l| l.starts_with("  CC [M]") || l.ends_with("seen")), "cut at whole lines");
    // A small one is read whole, and the first error wins.
    let log = "a.c:1:1: error: first\nb.c:2:2: error: second\n";
    assert_eq!(first_error_in(std::io::Cursor::new(log), log.len() as u64).unwrap().message, "first");
}

#[test]
fn paths_outside_a_build_directory_stay_as_they_are() {
    assert_eq!(relative("/var/lib/dkms/foo/1.0/build/src/a.c"), "src/a.c");
    assert_eq!(relative("/var/lib/dkms/foo/1.0/source/a.c"), "/var/lib/dkms/foo/1.0/source/a.c");
    assert_eq!(relative("/var/lib/dkms/foo/1.0/build"), "/var/lib/dkms/foo/1.0/build");
    assert_eq!(
        clean("see /var/lib/dkms/foo/1.0/build] and /var/lib/dkms/x"),
        "see /var/lib/dkms/foo/1.0/build] and /var/lib/dkms/x"
    );
}

#[test]
fn the_json_shape_is_file_line_column_message() {
    let e = at(Some("hello.c"), Some(12), Some(5), "bad");
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"file":"hello.c","line":12,"column":5,"message":"bad"}"#);
    assert_eq!(serde_json::to_string(&at(None, None, None, "m")).unwrap(), r#"{"message":"m"}"#);
}
