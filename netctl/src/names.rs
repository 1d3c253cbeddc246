//! Interface and namespace name rules, as the kernel enforces them
//! (`dev_valid_name`) and as iproute2 enforces them for `/run/netns`.

pub const IFNAMSIZ: usize = 16;

/// Checks an interface name: 1–15 bytes, not "." or "..", no '/', ':' or
/// whitespace.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() >= IFNAMSIZ {
        return Err(format!(
            "interface name {name:?} is {} bytes long; the kernel allows at most {}",
            name.len(),
            IFNAMSIZ - 1
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is reserved"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {name:?} contains {c:?}; '/', ':' and whitespace are not allowed"
        ));
    }
    Ok(())
}

/// Checks a namespace name: it becomes a file name under /run/netns.
pub fn check_netns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("namespace name is empty".into());
    }
    if name.len() > 200 {
        return Err(format!("namespace name {name:?} is too long"));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!(
            "namespace name {name:?} is not a valid file name under /run/netns"
        ));
    }
    if name.chars().any(|c| c.is_whitespace()) {
        return Err(format!("namespace name {name:?} contains whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_limits() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        assert!(check_ifname("a234567890123456").is_err());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("a:b").is_err());
        assert!(check_ifname("a b").is_err());
        assert!(check_ifname("..").is_err());
    }

    #[test]
    fn netns_names() {
        assert!(check_netns_name("ctr-1").is_ok());
        assert!(check_netns_name("a/b").is_err());
        assert!(check_netns_name("..").is_err());
        assert!(check_netns_name("").is_err());
    }
}
