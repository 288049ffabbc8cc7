module fuzzcheck

go 1.26
