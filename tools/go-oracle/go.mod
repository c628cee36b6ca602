module ksr.local/go-oracle

go 1.15
