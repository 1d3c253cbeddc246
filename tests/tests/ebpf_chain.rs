//! The eBPF build chain end to end: the object embedded in netctl loads,
//! attaches with tcx inside a test namespace, and counts real traffic.

use netctl::datapath::CounterProgram;
use netctl::netns::{self, Netns};
use netctl_tests::*;

#[test]
fn the_counter_program_loads_attaches_and_counts() {
    let p = unique("cnt");
    let _g = Cleanup::new(&p);
    let a = format!("{p}-a");
    let b = format!("{p}-b");
    for ns in [&a, &b] {
        assert!(netctl(&["netns", "add", ns]).status.success());
    }
    assert!(
        netctl(&[
            "veth",
            "add",
            "va",
            "--peer",
            "vb",
            "--peer-netns",
            &b,
            "-n",
            &a
        ])
        .status
        .success()
    );
    assert!(
        netctl(&["addr", "add", "10.201.0.1/24", "--dev", "va", "-n", &a])
            .status
            .success()
    );
    assert!(
        netctl(&["addr", "add", "10.201.0.2/24", "--dev", "vb", "-n", &b])
            .status
            .success()
    );

    let prog = CounterProgram::load().expect("the embedded program loads");
    // aya resolves "va" in the calling thread's namespace.
    let prog = netns::run_in(&Netns::named(&a), move || {
        let mut prog = prog;
        prog.attach_ingress("va").map_err(std::io::Error::other)?;
        Ok(prog)
    })
    .unwrap();
    assert!(ping(&b, "10.201.0.1"));
    let va = ip_json(&["-n", &a, "link", "show", "va"])[0]["ifindex"]
        .as_u64()
        .unwrap() as u32;
    let counts = prog.counters().unwrap();
    let c = counts.iter().find(|(i, _)| *i == va).expect("va counted").1;
    // Three echo requests at least, plus ARP.
    assert!(c.packets >= 3, "{c:?}");
    assert!(c.bytes >= 3 * 98, "{c:?}");
    drop(prog);
    // Detached with the program: traffic still flows.
    assert!(ping(&b, "10.201.0.1"));
}
